from minigit_server.cli import main

main()
