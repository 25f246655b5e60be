"""Running the bridge: the command line, gunicorn with its gevent worker, the bundled
demo and the process helpers shared by tests and benchmarks."""
