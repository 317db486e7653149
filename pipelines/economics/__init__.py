"""What self-hosting costs against API prices (`pipelines cost`): pure arithmetic over a measured
capacity and the `cost` section's prices."""
