"""prunebench's core: the CIFAR ResNet-18, data, training, masks, pruning strategies and the pruning study.

Command line: ``python -m prune train|prune|finetune|evaluate|report|study --help``.
"""
