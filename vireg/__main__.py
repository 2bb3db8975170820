from vireg.cli import main

main()
