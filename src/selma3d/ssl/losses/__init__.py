"""The SSL objectives as plain functions of tensors, one module per loss, separate from the
methods that make the views and run the networks (as lightly and solo-learn arrange them)."""

from .byol import byol_loss, normalized_mse
from .dino import dino_cross_entropy, teacher_entropy, teacher_probabilities, update_center
from .ibot import ibot_loss
from .koleo import koleo_loss
from .multitask import reconstruction_l1, rotation_loss, structure_loss, weighted_sum
from .ntxent import nt_xent
from .reconstruction import masked_reconstruction_loss
from .shape import foreground_weights, shape_regression_loss, weighted_masked_l1

__all__ = ["byol_loss", "dino_cross_entropy", "ibot_loss", "koleo_loss", "masked_reconstruction_loss",
           "normalized_mse", "nt_xent", "reconstruction_l1", "rotation_loss", "structure_loss",
           "teacher_entropy", "teacher_probabilities", "update_center", "weighted_sum",
           "foreground_weights", "shape_regression_loss", "weighted_masked_l1"]
