"""Training recipes shipped with condconv-nas (YAML files: proxy, cifar, imagenet)."""
