from unlocker.cli.main import main

main()
