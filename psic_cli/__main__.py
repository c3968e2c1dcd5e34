from psic_cli.cli import main

main()
