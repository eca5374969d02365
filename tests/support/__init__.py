"""Helpers the tests share: free ports, peer processes, generated DICOM data."""
