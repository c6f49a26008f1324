"""Differential privacy: the noise (OpenDP) and the budget (per collaboration and querying member)."""

from .budget import BudgetAccountant, BudgetStatus, Reservation
from .noise import DiscreteLaplace, NoiseMechanism

__all__ = ["BudgetAccountant", "BudgetStatus", "DiscreteLaplace", "NoiseMechanism", "Reservation"]
