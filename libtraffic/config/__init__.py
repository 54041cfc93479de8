from libtraffic.config.config_parser import ConfigParser

__all__ = ["ConfigParser"]
