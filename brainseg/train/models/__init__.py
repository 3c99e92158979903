"""The architectures brainseg trains, behind one registry (`brainseg.train.models.registry`)."""
