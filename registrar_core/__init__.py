"""sipconsole's registrar core: SIP message layer, transports, registrar and location service."""
