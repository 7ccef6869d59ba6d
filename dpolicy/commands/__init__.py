"""One module per `dpolicy` subcommand: ``configure(parser)`` adds its arguments, ``run(args) -> int`` runs it."""
