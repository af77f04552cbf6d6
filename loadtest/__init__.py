"""Load tests: Locust users that behave like sampling sites (locustfile.py),
the model that says what every answer must be (model.py), the campaign day
(day.py, day_shape.py) and the one-command headless run (run.py)."""
