"""prepsync: Prepare-Synchronization for identity-management exports."""

__version__ = "0.1.0"
