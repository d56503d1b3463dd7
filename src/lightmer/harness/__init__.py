"""The harness layer: the running nodes driven from outside, for tests and tools.

Not part of a robot's runtime. The rig that starts, feeds and watches the three node processes
(rig), eval-bag through the live nodes (live_eval) and `lightmer bench` (bench, its inputs in
bench_inputs, the live-node figures in bench_nodes: only those need ROS).
Imports every layer below it and ros; only experiments and the CLI import it.
"""
