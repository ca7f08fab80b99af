"""Locust load tests and the capacity ladder for the tracking service (see README, "Load tests")."""
