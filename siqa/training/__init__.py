"""Training: a run (siqa.training.run) of one or several content splits, its step, its
checkpoints and run state, several splits at once, several processes and preemption."""
