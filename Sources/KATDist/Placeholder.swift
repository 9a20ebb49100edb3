import KATModel
