"""The simulated cloud ("cloud in a box"), for tests only: dstack's own code against a simulated AWS and GCP, with
the Pulumi engine swapped for one that asks the simulator (tests/cloudsim/simulator.py has the overview)."""
