# Stand-in for pysqlcipher (which needs libsqlcipher to build), used only by the Soledad
# conformance tests: Soledad's local blob store runs on plain sqlite3, unencrypted. The issue
# allows exactly this stub; Soledad's HTTP code runs unmodified.
