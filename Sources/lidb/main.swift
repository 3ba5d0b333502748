import LidbCLI

LidbCommand.main()
