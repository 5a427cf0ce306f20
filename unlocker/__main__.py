from unlocker.cli import main

main()
