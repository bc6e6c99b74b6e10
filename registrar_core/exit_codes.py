"""Exit statuses of every ``sipconsole`` command, one meaning each (``--help`` lists them).

Scripts branch on these, so a number never changes meaning between subcommands.
"""

OK = 0
FAILED = 1  # the request failed or was refused: not found, storage failure, database held by another
USAGE = 2  # bad command line, config file or value: nothing was attempted
NO_REGISTRAR = 3  # no registrar answers on the control socket
DROPPED = 4  # the registrar closed the control connection before its reply was complete

HELP = ("exit status: 0 ok, 1 failed or not found, 2 bad usage or configuration, "
        "3 no registrar answers on the control socket, 4 the registrar dropped the connection mid-reply")
