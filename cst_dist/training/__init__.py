"""Training: preference losses, the CST-DPO trainer and its DeepSpeed plumbing."""
