"""The ``sipconsole`` command, above both packages: ``registrar_core`` (the registrar) and
``console`` (the Textual console). ``python -m sipconsole`` runs it."""
