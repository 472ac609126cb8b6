"""The six fleetloop services; each package wires one service and never imports another."""
