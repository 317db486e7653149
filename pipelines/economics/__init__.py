"""What self-hosting costs against API prices, and what a lifecycle run cost: pure arithmetic over
measured figures (`pipelines.serving.capacity`, the run record's stage timings) and the `cost`
section's prices."""
