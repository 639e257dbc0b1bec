"""kailin.align"""
