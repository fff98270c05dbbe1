from diskguard.cli import main

main()
