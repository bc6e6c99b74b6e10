"""sipconsole's Textual operator console."""
