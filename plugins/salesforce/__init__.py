"""Salesforce: for now only the local REST emulator (``python -m plugins.salesforce.emulator``)."""
