"""The suite's tooling around the training library: the experiment registry, the command line, the
DVC pipeline, images, the results table and the reproduction check. The library (`medrepro.*`
outside this package) never imports from here and never names an experiment."""
