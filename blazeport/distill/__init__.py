"""Distillation of a converted original (teacher) into a student, on unlabeled images."""
