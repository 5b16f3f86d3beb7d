"""Wire formats: bytes on the wire, pinned against the reference client.

``_imds`` (the IMDS v2 ``getplatformmetadata`` / ``issuecredential`` requests), with
``_retry`` (the IMDS retry policy), ``_imds_answers`` (their answers, validated) and ``_http``
(urllib3 pools, capped reads and a GET within a deadline); ``_ests`` (the ESTS ``mtls_pop``
token request and response), ``_csr`` (the CSR and its attributes) and ``_der`` (the DER
encoder they share), with ``_watchdog`` (socket deadlines for the IMDS leg). These modules
may import the core (errors, identity, policy, secret) and each other; never the client, the
token cache or a backend.
"""
