"""The DICOM gateway (``cad dicom-gateway``): images in from a PACS by C-STORE, candidates
classified through the CAD server's Classify RPC, results out as TID 1500 Structured Reports."""
