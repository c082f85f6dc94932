"""What Ray Train runs on every worker, in a module that imports nothing: Ray Train's controller
unpickles the trainer's function by reference when it starts, before any worker, and importing
the loop there (torch, FFCV, the models) would hold the workers up by seconds."""


def train_worker(config: dict) -> None:
    from orchestrator import startup_trace

    startup_trace.mark("worker: train function started", config.get("trace"))
    from orchestrator.train.loop import train_worker as run  # torch, FFCV, the models: on the worker only

    run(config)
