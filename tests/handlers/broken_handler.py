raise ImportError("this handler module fails on import")
