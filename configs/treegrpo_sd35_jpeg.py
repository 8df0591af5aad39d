# TreeGRPO on SD3.5-medium with the JPEG-compressibility reward (DDPO's first task; needs no
# reward weights): everything else as treegrpo_sd3_hps.py.
_base_ = ['./treegrpo_sd3_hps.py']

reward = dict(_delete_=True, type='JPEGCompressibility', quality=95)
