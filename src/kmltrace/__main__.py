from kmltrace.cli import main

main()
