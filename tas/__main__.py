from tas.cli import main

main()
