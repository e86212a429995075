"""Lightning training (pretraining, RL fine-tuning), evaluation, reports and the `bwarea` command line."""
