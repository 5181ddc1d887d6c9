"""Channel pruning of students: network slimming's sparsity term during distillation
(:mod:`blazeport.pruning.slimming`) and ``blazeport prune`` (:mod:`blazeport.pruning.prune`)."""
