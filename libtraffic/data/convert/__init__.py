"""Converters from the files the papers distributed to LibCity atomic-file datasets.

    python -m libtraffic.data.convert dcrnn --h5 metr-la.h5 --sensor_graph DIR --dataset METR_LA
    python -m libtraffic.data.convert pems --npz PEMS04.npz --distances PEMS04.csv --dataset PEMSD4

Each converter (one module per source format) reads its files into a ``Converted`` dataset, which
``output.write_dataset`` writes as raw_data/<dataset>/{<dataset>.geo, .rel, .dyna, config.json}.
"""
