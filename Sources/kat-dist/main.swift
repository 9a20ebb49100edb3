print("kat-dist")
