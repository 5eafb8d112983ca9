"""The media plane: what the bytes of a sample mean, synchronous and free of I/O but files.

``frames`` reads RAW frames as numpy views and writes them, ``images`` handles encoded
samples (JPG, PNG, BMP), ``shared_memory`` holds the receiver's regions and the sender's
arenas with their leases, ``inferences`` builds and checks inference messages, and
``inference_json`` gives them their JSON form.
"""
