"""Bundled data sets (files beside this module) and the scripts that generate them."""
