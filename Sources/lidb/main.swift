import LidbCLI

LidbCommand.runMain()
