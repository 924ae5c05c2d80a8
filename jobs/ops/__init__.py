"""Deployment: the job launcher, the live demo and the job specs."""
