/* The fused step's fp32 products alone, as a C model outside the engine: SmolLM2-135M's 30
 * layers × 7 products (q, k, v, o, gate, up, down; or FUSED=1: the engine's 4, qkv and gate/up
 * joined) and its LM head, each weight in its own buffer, multiplied by `rows` block rows with
 * cpu.c's scheme: 4 weight rows × up to 6 block rows of accumulators, tiles balanced, the group D
 * ahead (default 2) asked into L2 spread over a group's tile steps. It reproduces the engine's
 * `benchmarks/tiled_step.py --products` c(n) and isolates what limits a block:
 *
 *   gcc -O3 -fopenmp -march=x86-64-v3 -o /tmp/stream_products benchmarks/stream_products.c
 *   OMP_NUM_THREADS=2 /tmp/stream_products ROWS REPEATS CROSS REGION
 *     CROSS=1: the next product's first groups are asked for during this one's last;
 *     REGION=1: one OpenMP parallel region for all products (omp for), not one each;
 *   env: D=groups ahead, LONG=1 (all layer weights as one 576-column product), NOHEAD=1,
 *        ONLY=s / SKIP=digits (products by index 0..6), FUSED=1.
 *
 * Prints the best of REPEATS: ms, GFLOP/s and the weight stream in GB/s. Measured results are in
 * docs/performance.md ("Engine efficiency on a CPU").
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <omp.h>
#include <string.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
#define TILEP(NAME,G,T) \
__attribute__((target("avx512f"))) static void NAME(const float*x,const float*w,int k,float*y,int ldy,const char*pf,int per){ \
  __m512 acc[G][T]; for(int r=0;r<G;r++)for(int t=0;t<T;t++)acc[r][t]=_mm512_setzero_ps(); \
  for(int i=0;i<k;i+=16){ \
    if(pf){ for(int q=0;q<per;q++){ _mm_prefetch(pf,_MM_HINT_T1); pf+=64;} } \
    __m512 wv[G]; for(int r=0;r<G;r++) wv[r]=_mm512_loadu_ps(w+r*k+i); \
      for(int t=0;t<T;t++){__m512 xv=_mm512_loadu_ps(x+t*k+i); for(int r=0;r<G;r++) acc[r][t]=_mm512_fmadd_ps(xv,wv[r],acc[r][t]);} \
  } \
  for(int r=0;r<G;r++)for(int t=0;t<T;t++) y[t*ldy+r]=_mm512_reduce_add_ps(acc[r][t]); }
TILEP(p1,4,1) TILEP(p2,4,2) TILEP(p3,4,3) TILEP(p4,4,4) TILEP(p5,4,5) TILEP(p6,4,6)
typedef void(*tf)(const float*,const float*,int,float*,int,const char*,int);
static tf T_[7]={0,p1,p2,p3,p4,p5,p6};
static int D=2;
static int trows(int rows,int tiles,int t){return rows/tiles+(t<rows%tiles);}
// one product; `next`: the following matrix, whose first groups are prefetched during our last ones (cross)
static void product(const float*x,const float*w,float*y,int rows,int n,int k,const float*next,int nextk,int cross,int inregion){
  int G=4, groups=n/G, tiles=(rows+5)/6; int lines=G*k*4/64, steps=k/16;
  #define BODY \
  for(int g=0;g<groups;g++){ const char*later; \
    if(g+D<groups) later=(const char*)(w+(long)(g+D)*G*k); else if(cross&&next) later=(const char*)(next+(long)(g+D-groups)*G*nextk); else later=0; \
    for(int t=0,r0=0;t<tiles;r0+=trows(rows,tiles,t),t++){ int T=trows(rows,tiles,t); int from=lines*t/tiles,to=lines*(t+1)/tiles; \
      T_[T](x+r0*k,w+(long)g*G*k,k,y+r0*n+g*G,n,later?later+64L*from:0,(to-from+steps)/(steps+1));}}
  if(inregion){
    #pragma omp for schedule(static)
    BODY
  } else {
    #pragma omp parallel for schedule(static)
    BODY
  }
}
int main(int argc,char**argv){
  D=atoi(getenv("D")?getenv("D"):"2"); int rows=atoi(argv[1]), reps=atoi(argv[2]), cross=atoi(argv[3]), region=atoi(argv[4]);
  int L=30; int shapes[7][2]={{576,576},{192,576},{192,576},{576,576},{1536,576},{1536,576},{576,1536}};
  if(getenv("FUSED")){ int f[7][2]={{960,576},{576,576},{3072,576},{576,1536},{0,0},{0,0},{0,0}}; memcpy(shapes,f,sizeof f);}
  if(getenv("LONG")){ int f[7][2]={{30*(960+576+3072)+30*4*576/4,576},{0,0},{0,0},{0,0},{0,0},{0,0},{0,0}}; memcpy(shapes,f,sizeof f); L=1;}
  float*W[30*7+1]; int N[30*7+1],K[30*7+1]; int m=0; long total=0;
  int only=getenv("ONLY")?atoi(getenv("ONLY")):-1; int nohead=getenv("NOHEAD")!=0;
  for(int l=0;l<L;l++)for(int s=0;s<7;s++){ if(!shapes[s][0]) continue; if(only>=0&&s!=only) continue; if(getenv("SKIP")&&strchr(getenv("SKIP"),(char)(48+s))) continue;N[m]=shapes[s][0];K[m]=shapes[s][1];W[m]=aligned_alloc(64,4L*N[m]*K[m]);for(long i=0;i<(long)N[m]*K[m];i++)W[m][i]=(i%5)*0.1f;total+=4L*N[m]*K[m];m++;}
  if(!nohead){ N[m]=49152;K[m]=576;W[m]=aligned_alloc(64,4L*N[m]*K[m]);for(long i=0;i<(long)N[m]*K[m];i++)W[m][i]=(i%5)*0.1f;total+=4L*N[m]*K[m];m++; }
  float*x=aligned_alloc(64,4L*64*1536),*y=aligned_alloc(64,4L*64*49152); for(int i=0;i<64*1536;i++)x[i]=0.01f*(i%13);
  double flops=0; for(int i=0;i<m;i++) flops+=2.0*rows*N[i]*K[i];
  double best=1e9;
  for(int r=0;r<reps;r++){ double t0=now();
    if(region){
      #pragma omp parallel
      for(int i=0;i<m;i++) product(x,W[i],y,rows,N[i],K[i],i+1<m?W[i+1]:0,i+1<m?K[i+1]:0,cross,1);
    } else for(int i=0;i<m;i++) product(x,W[i],y,rows,N[i],K[i],i+1<m?W[i+1]:0,i+1<m?K[i+1]:0,cross,0);
    double dt=now()-t0; if(dt<best)best=dt;}
  printf("rows=%d cross=%d region=%d: %.2f ms, %.0f GFLOP/s, %.1f GB/s (%.0f MB)\n",rows,cross,region,best*1e3,flops/best/1e9,total/best/1e9,total/1e6);
}
