"""msicert: the Azure Managed Identity v2 binding certificate, store-first, and mtls_pop tokens."""
